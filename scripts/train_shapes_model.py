from reatco.commands.train_shapes_model import command  # the command `reatco-train-shapes`; its help: --help
raise SystemExit(command())
