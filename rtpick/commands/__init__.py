"""Sub-commands of the ``rtpick`` CLI; each module: ``add_arguments(parser)`` and ``run(args)``."""
