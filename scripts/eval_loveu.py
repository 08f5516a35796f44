from reatco.commands.eval_loveu import command  # the command `reatco-eval-loveu`; its help: --help
raise SystemExit(command())
