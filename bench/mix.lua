-- 90 % reads of the first page, 10 % creates.
dofile("bench/summary.lua")
local n = 0
local headers = { ["Content-Type"] = "application/json" }
local body = '{"message":"A benchmark message in the read/write mix."}'

function request()
  n = n + 1
  if n % 10 == 0 then
    return wrk.format("POST", "/api/messages", headers, body)
  end
  return wrk.format("GET", "/api/messages?limit=20")
end
