-- GET of the URL given on the command line.
dofile("bench/summary.lua")
