from reatco.commands.app import command  # the command `reatco-app`; its help: --help
raise SystemExit(command())
