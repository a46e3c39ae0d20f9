#!/bin/bash
# The README screenshot: the release binary on the embedded model in Xvfb (apt-get install xvfb
# xdotool imagemagick), a prompt typed, two images generated; writes /tmp/shot-1.png.
export DISPLAY=:99
Xvfb :99 -screen 0 1280x800x24 >/dev/null 2>&1 &
XV=$!
sleep 2
rm -rf /tmp/shot-home /tmp/shot-out; mkdir -p /tmp/shot-home /tmp/shot-out
HOME=/tmp/shot-home XDG_RUNTIME_DIR=/tmp/shot-home "$(dirname "$0")/../target/release/latent-studio" --output /tmp/shot-out >/tmp/shot.log 2>&1 &
APP=$!
sleep 10
WID=$(xdotool search --name "Latent Studio" | head -1)
xdotool windowmove $WID 0 0; xdotool windowsize $WID 1280 800; sleep 2
xdotool windowfocus --sync $WID; xdotool mousemove 190 165 click 1; sleep 0.5
xdotool type --window $WID --delay 30 "a yellow star on a black background"; sleep 0.5
xdotool key ctrl+Return; sleep 6
xdotool key ctrl+Return; sleep 6
import -window root /tmp/shot-1.png
kill $APP; sleep 1; kill $XV
