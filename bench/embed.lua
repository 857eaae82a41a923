-- wrk script: POST one embedding request to the model named in the first argument.
init = function(args)
   local model = args[1] or "sim-embed"
   wrk.method = "POST"
   wrk.body = '{"model": "' .. model .. '", "input": "hello world", "encoding_format": "base64"}'
   wrk.headers["Content-Type"] = "application/json"
end
