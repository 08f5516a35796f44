from reatco.commands.tune import command  # the command `reatco-tune`; its help: --help
raise SystemExit(command())
