-- Replays pre-built pushes (one "path<TAB>body" per line), each thread taking its own share so every
-- MsgId is sent once. Used by bench/webhook_load.py.
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local file, nthreads = args[1], tonumber(args[2])
  requests, i = {}, 0
  local n = 0
  for line in io.lines(file) do
    if n % nthreads == id then
      local tab = line:find("\t", 1, true)
      table.insert(requests, wrk.format("POST", line:sub(1, tab - 1),
        {["Content-Type"] = "text/xml"}, line:sub(tab + 1)))
    end
    n = n + 1
  end
end

function request()
  i = i % #requests + 1
  return requests[i]
end

function response(status, headers, body)
  if status ~= 200 or body ~= "success" then
    errors = (errors or 0) + 1
  end
end
