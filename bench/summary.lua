-- Shared by every scenario: writes wrk's summary as JSON to $WRK_JSON when the run ends.
local path = os.getenv("WRK_JSON")

function done(summary, latency, requests)
  local e = summary.errors
  local f = assert(io.open(path, "w"))
  f:write(string.format(
    '{"requests":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
  f:close()
end
