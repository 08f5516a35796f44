from reatco.commands.bench_memory import command  # the command `reatco-bench-memory`; its help: --help
raise SystemExit(command())
