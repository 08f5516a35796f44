from reatco.commands.demo_strip import command  # the command `reatco-demo-strip`; its help: --help
raise SystemExit(command())
