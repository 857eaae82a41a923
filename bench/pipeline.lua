-- wrk script: 16 pipelined GETs per write (wrk counts each response as one request).
init = function(args)
   local path = args[1] or "/hello"
   local r = {}
   for i = 1, 16 do
      r[i] = wrk.format(nil, path)
   end
   req = table.concat(r)
end

request = function()
   return req
end
