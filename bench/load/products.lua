-- wrk script of the load benchmark (bench/load.py): GET /products/{id} with ids spread
-- uniformly over 1..1000, and one JSON line of results at the end (latencies in µs).
math.randomseed(os.time())

request = function()
  return wrk.format("GET", "/products/" .. math.random(1000))
end

done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %d, "p99_us": %d, "p999_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, errors,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
