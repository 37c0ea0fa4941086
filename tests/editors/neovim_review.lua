-- Drives Offload from a real headless Neovim: quick fix on a diagnostic -> task -> progress ->
-- review diagnostic -> accept through a code action -> the edit lands in the buffer.
-- Inputs come from the environment; the outcome is written as JSON to OFFLOAD_RESULT.
local env = vim.env
local out = { progress = {}, states = {}, errors = {} }
local function finish()
  local f = assert(io.open(env.OFFLOAD_RESULT, "w"))
  f:write(vim.json.encode(out))
  f:close()
  vim.cmd("qa!")
end
local function fail(msg)
  table.insert(out.errors, msg)
  finish()
end

vim.cmd("edit " .. env.OFFLOAD_REPO .. "/calc.py")
local buf = vim.api.nvim_get_current_buf()
vim.api.nvim_create_autocmd("LspProgress", {
  callback = function(ev)
    table.insert(out.progress, ev.data.params.value.kind)
  end,
})
local client_id = vim.lsp.start({
  name = "offload",
  cmd = { env.OFFLOAD_PYTHON, "-m", "offload.server.cli", "serve" },
  root_dir = env.OFFLOAD_REPO,
  init_options = { settings = { model = { base_url = env.OFFLOAD_MODEL_URL, name = "fix-failing-test" } } },
  handlers = {
    ["offload/taskUpdated"] = function(_, result)
      table.insert(out.states, result.state)
    end,
  },
})
local client = vim.lsp.get_client_by_id(client_id)
if not vim.wait(20000, function() return client.initialized end, 50) then
  return fail("the server did not initialize")
end

-- a linter's diagnostic on `return a - b`; ask the server for code actions there
local function actions_at(diag)
  local params = {
    textDocument = { uri = vim.uri_from_bufnr(buf) },
    range = { start = { line = diag.lnum, character = 0 }, ["end"] = { line = diag.end_lnum, character = 0 } },
    context = { diagnostics = { diag.user_data and diag.user_data.lsp or {
      range = { start = { line = diag.lnum, character = diag.col }, ["end"] = { line = diag.end_lnum, character = diag.end_col } },
      message = diag.message, source = diag.source, severity = diag.severity } } },
  }
  local response = client:request_sync("textDocument/codeAction", params, 10000, buf)
  return response and response.result or {}
end
local linter = { lnum = 4, end_lnum = 4, col = 4, end_col = 16, message = "add() subtracts", source = "pytest", severity = 1 }
local actions = actions_at(linter)
if #actions == 0 or actions[1].title ~= "Offload: fix this" then
  return fail("no Offload quick fix: " .. vim.inspect(actions))
end
local reply = client:request_sync("workspace/executeCommand", actions[1].command, 10000, buf)
out.task = reply.result and reply.result.taskId
if not out.task then return fail("no task: " .. vim.inspect(reply)) end

if not vim.wait(180000, function() return vim.tbl_contains(out.states, "finished") end, 100) then
  return fail("the task did not finish: " .. vim.inspect(out.states))
end
out.disk_before_accept = table.concat(vim.fn.readfile(env.OFFLOAD_REPO .. "/calc.py"), "\n")
local review
vim.wait(10000, function()
  for _, d in ipairs(vim.diagnostic.get(buf)) do
    if d.source == "offload" then review = d end
  end
  return review ~= nil
end, 50)
if not review then return fail("no review diagnostic") end
out.review_line = review.lnum
local accept
for _, action in ipairs(actions_at(review)) do
  if action.title == "Offload: accept this change" then accept = action end
end
if not accept then return fail("no accept action on the review diagnostic") end
client:request_sync("workspace/executeCommand", accept.command, 10000, buf)
vim.wait(10000, function()
  return table.concat(vim.api.nvim_buf_get_lines(buf, 0, -1, false), "\n"):find("a %+ b") ~= nil
end, 50)
out.buffer = table.concat(vim.api.nvim_buf_get_lines(buf, 0, -1, false), "\n")
vim.wait(5000, function()
  for _, d in ipairs(vim.diagnostic.get(buf)) do
    if d.source == "offload" then return false end
  end
  return true
end, 50)
out.review_left = #vim.tbl_filter(function(d) return d.source == "offload" end, vim.diagnostic.get(buf))
finish()
