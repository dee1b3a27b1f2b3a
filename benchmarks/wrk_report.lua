-- Loaded by wrk with -s. WRK_PAUSE_MS, if set, makes each connection wait that
-- long before each request, to offer a steady load below the server's capacity
-- instead of saturating it.
local pause = tonumber(os.getenv("WRK_PAUSE_MS") or "0") or 0
if pause > 0 then
  delay = function()
    return pause
  end
end

-- wrk calls done() once, at the end: print the figures as one JSON line, in
-- microseconds, so that the benchmark need not parse wrk's human-readable units.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %.1f, "p50_us": %.1f, ' ..
    '"p90_us": %.1f, "p99_us": %.1f, "max_us": %.1f, "status_errors": %d, ' ..
    '"socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency.max, e.status,
    e.connect + e.read + e.write + e.timeout))
end
