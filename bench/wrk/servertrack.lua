-- wrk driver for bench/http_bench.py: one script, the mode comes from the arguments after "--".
--
--   get    <paths_file>                       GET a path from the file, rotating
--   single <names_file>                       POST /servers/<name>/loads {"cpu", "ram"} (no ts)
--   batch  <count> <prefix> <base_ts> <step>  POST /loads, <count> items, one fresh ts per request
--
-- Every mode defines request() and response(), so the wrk settings are the same for all of them
-- (dynamic requests, bodies read). done() prints per-status counts, and for batch the sums of the
-- 202 replies' "accepted" and "duplicates", as "WRK_..." lines that the Python side parses.

local threads = {}
local mode
local items = {}
local parts
local counter = 0
local batch_base, batch_step
statuses = {}
accepted = 0
duplicates = 0

-- At most this many wrk threads: thread k of request c gets ts slot c * MAX_THREADS + k.
local MAX_THREADS = 64

function setup(thread)
   thread:set("thread_id", #threads)
   table.insert(threads, thread)
end

local function read_lines(path)
   local lines = {}
   for line in io.lines(path) do
      if #line > 0 then
         table.insert(lines, line)
      end
   end
   assert(#lines > 0, "no lines in " .. path)
   return lines
end

function init(args)
   mode = args[1]
   if mode == "get" or mode == "single" then
      items = read_lines(args[2])
   elseif mode == "batch" then
      local count, prefix = tonumber(args[2]), args[3]
      batch_base, batch_step = tonumber(args[4]), tonumber(args[5])
      -- The body is parts joined by the ts string: table.concat(parts, ts) puts the fresh ts
      -- into every item, so (server, ts) is new on every request and nothing is a duplicate.
      parts = {}
      for i = 0, count - 1 do
         local head = (i == 0) and "[" or "},"
         parts[#parts + 1] = string.format(
            '%s{"server": "%s%d", "cpu": %.1f, "ram": %.1f, "ts": ',
            head, prefix, i, (i * 7) % 100, (i * 13) % 100)
      end
      parts[#parts + 1] = "}]"
   else
      error("unknown mode " .. tostring(mode))
   end
end

local json_headers = { ["Content-Type"] = "application/json" }

function request()
   counter = counter + 1
   if mode == "get" then
      return wrk.format("GET", items[(counter + thread_id * 7919) % #items + 1])
   elseif mode == "single" then
      local name = items[(counter + thread_id * 7919) % #items + 1]
      local body = string.format('{"cpu": %.1f, "ram": %.1f}', (counter * 7) % 100,
                                 (counter * 13) % 100)
      return wrk.format("POST", "/servers/" .. name .. "/loads", json_headers, body)
   end
   local ts = batch_base + (counter * MAX_THREADS + thread_id) * batch_step
   return wrk.format("POST", "/loads", json_headers,
                     table.concat(parts, string.format("%.6f", ts)))
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if mode == "batch" and status == 202 then
      accepted = accepted + (tonumber(body:match('"accepted":%s*(%d+)')) or 0)
      duplicates = duplicates + (tonumber(body:match('"duplicates":%s*(%d+)')) or 0)
   end
end

function done(summary, latency, requests)
   local total, total_accepted, total_duplicates = {}, 0, 0
   for _, thread in ipairs(threads) do
      for status, n in pairs(thread:get("statuses")) do
         total[status] = (total[status] or 0) + n
      end
      total_accepted = total_accepted + thread:get("accepted")
      total_duplicates = total_duplicates + thread:get("duplicates")
   end
   for status, n in pairs(total) do
      io.write(string.format("WRK_STATUS %d %d\n", status, n))
   end
   io.write(string.format("WRK_ACCEPTED %d\nWRK_DUPLICATES %d\n", total_accepted,
                          total_duplicates))
end
