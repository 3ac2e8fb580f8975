"""Recorded real-world samples of the device protocols, from their public documents.

OwnTracks: the shapes of the booklet's JSON reference (https://owntracks.org/booklet/
tech/json/) and of what the Android and iOS apps publish; Jane's Paris fix from the
booklet's HTTP page. NMEA 0183: the classic RMC/GGA pair of the NMEA reference pages
(123519 UTC, 23 March 1994, 48°07.038' N 11°31.000' E) and the u-blox receiver
description's examples, also with the ``GN`` talker a multi-GNSS receiver uses; every
checksum as published.
"""

from __future__ import annotations

OWNTRACKS_ANDROID = (
    b'{"_type":"location","acc":12,"batt":92,"conn":"w","doze":false,'
    b'"lat":50.9326135,"lon":6.9464344,"tid":"et","tst":1489529135}'
)
OWNTRACKS_IOS = (
    b'{"batt":64,"lon":-9.093604,"acc":10,"p":101.15644836425781,"vac":10,'
    b'"lat":38.763523,"t":"t","conn":"w","tst":1564047365,"alt":10,'
    b'"_type":"location","tid":"P9"}'
)
OWNTRACKS_BOOKLET = (
    b'{"_type":"location","tid":"JJ","lat":48.85833,"lon":2.29513,"tst":1455959765,'
    b'"acc":65,"batt":80,"vel":0,"t":"u","inregions":["Home"],'
    b'"topic":"owntracks/jane/phone"}'
)
OWNTRACKS_LWT = b'{"_type":"lwt","tst":1380738247}'
OWNTRACKS_TRANSITION = (
    b'{"_type":"transition","wtst":1380738247,"lat":48.85833,"lon":2.29513,'
    b'"tst":1455959765,"acc":65,"event":"enter","desc":"Home","t":"c"}'
)

NMEA_RMC = b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A"
NMEA_GGA = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
UBLOX_RMC = b"$GPRMC,083559.00,A,4717.11437,N,00833.91522,E,0.004,77.52,091202,,,A*57"
UBLOX_GGA = b"$GPGGA,092725.00,4717.11399,N,00833.91590,E,1,08,1.01,499.6,M,48.0,M,,*5B"
GN_RMC = b"$GNRMC,083559.00,A,4717.11437,N,00833.91522,E,0.004,77.52,091202,,,A*49"
GN_GGA = b"$GNGGA,092725.00,4717.11399,N,00833.91590,E,1,08,1.01,499.6,M,48.0,M,,*45"
#: A satellites-in-view sentence (taken and ignored: no position in it).
NMEA_GSV = b"$GPGSV,2,1,08,01,40,083,46,02,17,308,41,12,07,344,39,14,22,228,45*75"
