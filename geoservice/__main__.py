from geoservice.cli import main

raise SystemExit(main())
