from pingmesh.cli.main import main

raise SystemExit(main())
