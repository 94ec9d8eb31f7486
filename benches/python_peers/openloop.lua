-- Fixed-rate (open-loop) load for wrk, wrk2-style: run with one connection per thread
-- (`wrk -t N -c N`) so each Lua state drives exactly one connection. Connection i sends
-- request k at the intended time t0 + i/R + k*N/R (R = RATE req/s over all N
-- connections); latency runs from the intended time (or the actual send, if the send
-- was early by wrk's 1 ms timer resolution) to the answer, so a stalled server is
-- charged for the requests it delayed (no coordinated omission). The first request of
-- each connection, and every request intended in the schedule's first 0.5 s, is a warm-up
-- and is not recorded.
-- Filled in by compare.py: PATH, BODY, RATE, CONNS.
local ffi = require("ffi")
pcall(ffi.cdef, "typedef struct { long tv_sec; long tv_nsec; } abg_timespec; int clock_gettime(int, abg_timespec *);")
local ts = ffi.new("abg_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC: one clock for every thread
  return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end

local path, body, rate, conns = %PATH%, %BODY%, %RATE%, %CONNS%
local headers = {["Content-Type"] = "application/json"}

-- main thread
local threads, T0 = {}, nil
function setup(thread)
  if T0 == nil then T0 = now_us() + 300000 end
  thread:set("id", #threads)
  thread:set("t0", T0)
  table.insert(threads, thread)
end

-- per thread (globals so that done() can read them with thread:get)
lats, errors, slot = {}, 0, -1
local n, offset, interval, intended, sent = 0, 0, 0, 0, 0

function init(args)
  interval = conns / rate * 1e6
  offset = t0 + id * 1e6 / rate
end

function delay()
  slot = slot + 1
  local wait = (offset + slot * interval - now_us()) / 1000
  if wait <= 0 then return 0 end
  return math.floor(wait)
end

function request()
  sent = now_us()
  intended = offset + slot * interval
  return wrk.format("POST", path, headers, body)
end

function response(status, hdrs, b)
  if slot < 0 or intended < t0 + 500000 then return end
  local t = now_us()
  local start = intended
  if sent < start then start = sent end
  n = n + 1
  lats[n] = t - start
  if status ~= 200 then errors = errors + 1 end
end

function done(summary, latency, requests)
  local all, errs = {}, 0
  for _, t in ipairs(threads) do
    for _, v in ipairs(t:get("lats")) do all[#all + 1] = v end
    errs = errs + t:get("errors")
  end
  table.sort(all)
  local function q(p)
    if #all == 0 then return -1 end
    local i = math.ceil(p * #all)
    if i < 1 then i = 1 end
    return math.floor(all[i])
  end
  local e = summary.errors
  io.write(string.format(
    'OPENLOOP {"count": %d, "p50": %d, "p90": %d, "p99": %d, "p999": %d, "max": %d, ' ..
    '"status_errors": %d, "socket_errors": %d}\n',
    #all, q(0.5), q(0.9), q(0.99), q(0.999), q(1.0), errs,
    e.connect + e.read + e.write + e.timeout))
end
