from reatco.commands.bench_rad import command  # the command `reatco-bench-rad`; its help: --help
raise SystemExit(command())
