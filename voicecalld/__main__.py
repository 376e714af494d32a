"""``python -m voicecalld``: the same commands as the ``voicecalld`` console script."""

from voicecalld.cli import main

raise SystemExit(main())
