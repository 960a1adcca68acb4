from geoflow.cli import console

console()
