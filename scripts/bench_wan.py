from reatco.commands.bench_wan import command  # the command `reatco-bench-wan`; its help: --help
raise SystemExit(command())
