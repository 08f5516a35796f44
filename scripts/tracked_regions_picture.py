from reatco.commands.tracked_regions_picture import command  # the command `reatco-tracked-regions-picture`; its help: --help
raise SystemExit(command())
