-- Loaded by wrk with -s. WRK_PAUSE_MS, if set, makes each connection wait that
-- long before each request, to offer a steady load below the server's capacity
-- instead of saturating it.
local pause = tonumber(os.getenv("WRK_PAUSE_MS") or "0") or 0
if pause > 0 then
  delay = function()
    return pause
  end
end

-- wrk calls done() once, at the end: the figures as one JSON line, in µs, so
-- that the harness need not parse wrk's human-readable units. errors: answers
-- other than 2xx/3xx, and failed connects, reads, writes and timeouts.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %.1f, "p99_us": %.1f, ' ..
    '"errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(99),
    e.status + e.connect + e.read + e.write + e.timeout))
end
