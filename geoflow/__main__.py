from geoflow.cli import main

main()
