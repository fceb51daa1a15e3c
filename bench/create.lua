-- POST /api/messages: every request creates a message.
dofile("bench/summary.lua")
wrk.method = "POST"
wrk.path = "/api/messages"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"message":"A benchmark message, about as long as a real one tends to be."}'
