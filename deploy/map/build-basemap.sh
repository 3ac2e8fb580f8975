#!/bin/sh
# Vector tiles of an OpenStreetMap extract, as one PMTiles file the dispatch map serves.
#
#   deploy/map/build-basemap.sh IN.osm.pbf OUT.pmtiles PMTILES_WHEEL [PYTHON]
#
# GDAL's OSM driver reads the extract; each layer the map draws (layers.json: roads,
# rail, buildings, water, green, areas, each feature with `kind` and `name`) is selected
# into a GeoPackage, GDAL's MVT writer cuts it into zoom 10-15 vector tiles in an
# MBTiles file, and the `pmtiles` package (its wheel, PMTILES_WHEEL, is imported
# directly: it is pure Python) turns that into PMTiles. Same input, same bytes out.
# GDAL's notes about relations cut at the extract's edge go to OUT's folder, ogr.log.
set -eu

in=$1
out=$2
wheel=$3
python=${4:-python3}
here=$(dirname "$0")
work=$(mktemp -d "${TMPDIR:-/tmp}/basemap.XXXXXX")
trap 'rm -rf "$work"' EXIT
log=$(dirname "$out")/ogr.log
: >"$log"

layer() {  # layer NAME SQL: the features of one layer, from the extract
	ogr2ogr --config CPL_LOG "$log" -f GPKG ${append:-} "$work/layers.gpkg" "$in" \
		-dialect SQLite -nln "$1" -sql "$2"
	append=-update
}
layer roads "SELECT geometry, highway AS kind, name FROM lines WHERE highway IS NOT NULL"
layer rail "SELECT geometry, railway AS kind, name FROM lines WHERE railway IS NOT NULL"
layer buildings "SELECT geometry, building AS kind, name FROM multipolygons
	WHERE building IS NOT NULL"
layer water "SELECT geometry, COALESCE(\"natural\", landuse) AS kind, name FROM multipolygons
	WHERE \"natural\" IN ('water', 'bay') OR landuse IN ('basin', 'reservoir')"
layer green "SELECT geometry, COALESCE(leisure, landuse, \"natural\") AS kind, name
	FROM multipolygons WHERE leisure IN ('park', 'garden', 'playground', 'pitch')
	OR landuse IN ('grass', 'forest', 'recreation_ground', 'cemetery', 'meadow', 'village_green')
	OR \"natural\" IN ('wood', 'scrub', 'grassland')"
layer areas "SELECT geometry, COALESCE(amenity, landuse) AS kind, name FROM multipolygons
	WHERE landuse IN ('railway', 'commercial', 'retail', 'residential') OR amenity = 'parking'"

ogr2ogr --config CPL_LOG "$log" -f MBTiles "$work/tiles.mbtiles" "$work/layers.gpkg" \
	-dsco MINZOOM=10 -dsco MAXZOOM=15 -dsco CONF="$here/layers.json" \
	-dsco NAME="$(basename "$out" .pmtiles)" \
	-dsco DESCRIPTION="Streets, rail, buildings, water and green areas from OpenStreetMap"

PYTHONPATH="$wheel" "$python" - "$work/tiles.mbtiles" "$out.tmp" <<'PY'
import sqlite3
import sys

from pmtiles.convert import mbtiles_to_pmtiles

mbtiles, out = sys.argv[1:]
with sqlite3.connect(mbtiles) as db:
    # ODbL: the map must credit OpenStreetMap; the page shows this line.
    db.execute("INSERT INTO metadata VALUES ('attribution', '© OpenStreetMap contributors')")
    # GDAL puts the minimum zoom in the centre; a street map opens at street level.
    (center,) = db.execute("SELECT value FROM metadata WHERE name = 'center'").fetchone()
    lon, lat, _ = center.split(",")
    db.execute("UPDATE metadata SET value = ? WHERE name = 'center'", (f"{lon},{lat},15",))
db.close()
mbtiles_to_pmtiles(mbtiles, out, None)
PY
mv "$out.tmp" "$out"
