from nas_asc.cli import main

raise SystemExit(main())
