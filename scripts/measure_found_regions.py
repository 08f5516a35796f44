from reatco.commands.measure_found_regions import command  # the command `reatco-measure-found-regions`; its help: --help
raise SystemExit(command())
