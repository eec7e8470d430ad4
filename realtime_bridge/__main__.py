from realtime_bridge.cli import main

main()
