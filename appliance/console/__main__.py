from appliance.console.app import main

raise SystemExit(main())
