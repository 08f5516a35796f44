from reatco.commands.edit import command  # the command `reatco-edit`; its help: --help
raise SystemExit(command())
