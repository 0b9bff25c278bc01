from r1lite.cli import main

raise SystemExit(main())
