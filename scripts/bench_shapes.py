from reatco.commands.bench_shapes import command  # the command `reatco-bench-shapes`; its help: --help
raise SystemExit(command())
