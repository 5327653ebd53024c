-- wrk script: POST a JSON body, count answers by status across threads, and
-- print one machine-readable summary line.
--   BODY  the request body (default "world" as JSON)
wrk.method = "POST"
wrk.body = os.getenv("BODY") or '"world"'
wrk.headers["Content-Type"] = "application/json"

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  ok, s503, other = 0, 0, 0
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
  elseif status == 503 then
    s503 = s503 + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local n200, n503, nother = 0, 0, 0
  for _, t in ipairs(threads) do
    n200 = n200 + t:get("ok")
    n503 = n503 + t:get("s503")
    nother = nother + t:get("other")
  end
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    "RESULT requests=%d rps=%.1f ok_rps=%.1f p50_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f " ..
    "s200=%d s503=%d s_other=%d connect_err=%d read_err=%d write_err=%d timeouts=%d\n",
    summary.requests, summary.requests / secs, n200 / secs,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, latency.max / 1000,
    n200, n503, nother, e.connect, e.read, e.write, e.timeout))
end
