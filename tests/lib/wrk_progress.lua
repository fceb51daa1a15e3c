-- The tests' wrk script: bench/summary.lua's JSON summary when the run ends, and on the way
-- each thread's count of answers (all, and those below 400) in $WRK_PROGRESS.<thread>, so
-- that a test waits on requests that went through, not on time. Run from the repository root.
dofile("bench/summary.lua")

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("number", threads)
end

local progress = os.getenv("WRK_PROGRESS")
local answered, below_400 = 0, 0

function response(status, headers, body)
  answered = answered + 1
  if status < 400 then
    below_400 = below_400 + 1
  end
  if answered % 10 == 0 then
    -- Written aside and renamed, so that a reader never sees a half-written file.
    local path = progress .. "." .. number
    local f = assert(io.open(path .. ".new", "w"))
    f:write(answered, " ", below_400, "\n")
    f:close()
    assert(os.rename(path .. ".new", path))
  end
end
