from reatco.commands.make_shapes_demo import command  # its help: --help
raise SystemExit(command())
