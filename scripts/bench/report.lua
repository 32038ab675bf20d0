-- wrk script: prints one machine-readable summary line after the run.
-- Latency figures are in microseconds; duration is the measured wall time.
--
-- Scenarios that need per-request behaviour (signed tokens, varied paths)
-- can set wrk.headers / override request() in a script of their own and
-- keep this done() so bench.sh can parse the output.

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d " ..
    "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
