-- Drives Offload from a real headless Neovim 0.11, configured as docs/editors.md says, through a
-- whole review: a task started from a code action, its progress, one hunk accepted while the user
-- types elsewhere, another rejected, a follow-up, the server restarted, the review found again and
-- accepted. Inputs come from the environment; the outcome is written as JSON to OFFLOAD_RESULT.
local env = vim.env
local out = { progress = {}, states = {}, messages = {}, errors = {} }
local function finish()
  out.messages = vim.split(vim.fn.execute("messages"), "\n") -- where window/showMessage goes
  local f = assert(io.open(env.OFFLOAD_RESULT, "w"))
  f:write(vim.json.encode(out))
  f:close()
  vim.cmd("qa!")
end
local function fail(msg)
  table.insert(out.errors, msg)
  finish()
end

vim.cmd("filetype on") -- an init script runs before Neovim turns it on
vim.ui.input = function(_, done) done("Also document add") end -- what the user types when asked
-- the configuration and keymaps of docs/editors.md, as they are written there
for path in env.OFFLOAD_CONFIG:gmatch("[^:]+") do dofile(path) end
vim.lsp.handlers["offload/taskUpdated"] = function(_, result)
  table.insert(out.states, result.state)
end
vim.api.nvim_create_autocmd("LspProgress", {
  callback = function(ev)
    table.insert(out.progress, ev.data.params.value.kind)
  end,
})

vim.cmd("edit " .. env.OFFLOAD_REPO .. "/calc.py")
local buf = vim.api.nvim_get_current_buf()
local function client()
  return vim.lsp.get_clients({ name = "offload", bufnr = buf })[1]
end
local function text()
  return table.concat(vim.api.nvim_buf_get_lines(buf, 0, -1, false), "\n")
end
local function review()
  local c = client()
  if not c then return {} end
  local found = vim.diagnostic.get(buf, { namespace = vim.lsp.diagnostic.get_namespace(c.id) })
  found = vim.tbl_filter(function(d) return d.code == "proposal" end, found)
  table.sort(found, function(a, b) return a.lnum < b.lnum end)
  return found
end
local function count(list, value)
  return #vim.tbl_filter(function(v) return v == value end, list)
end
-- a key of docs/editors.md pressed with the cursor at the start of `line`
local function press(line, keys)
  vim.api.nvim_win_set_cursor(0, { line, 0 })
  vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes(keys, true, false, true), "mx", false)
end
if not vim.wait(20000, function() return client() ~= nil and client().initialized end, 50) then
  return fail("the server did not start")
end

-- a task from "fix the problem here" on the buggy line
press(5, "<leader>of")
if env.OFFLOAD_FLOW == "start" then -- the older configuration: started, and a task run from it
  vim.wait(180000, function() return count(out.states, "finished") == 1 end, 100)
  return finish()
end
if not vim.wait(180000, function() return count(out.states, "finished") == 1 end, 100) then
  return fail("the task did not finish: " .. vim.inspect(out.states))
end
if not vim.wait(10000, function() return #review() == 2 end, 50) then
  return fail("no review: " .. vim.inspect(vim.diagnostic.get(buf)))
end
out.disk_before_accept = table.concat(vim.fn.readfile(env.OFFLOAD_REPO .. "/calc.py"), "\n")
out.first_review = vim.tbl_map(function(d) return d.lnum end, review())

-- preview the fix whole: the hover's floating window
press(5, "<leader>op")
local function floating()
  for _, win in ipairs(vim.api.nvim_list_wins()) do
    if vim.api.nvim_win_get_config(win).relative ~= "" then
      return table.concat(vim.api.nvim_buf_get_lines(vim.api.nvim_win_get_buf(win), 0, -1, false), "\n")
    end
  end
end
vim.wait(10000, function() return floating() ~= nil end, 50)
out.preview = floating()
for _, win in ipairs(vim.api.nvim_list_wins()) do
  if vim.api.nvim_win_get_config(win).relative ~= "" then vim.api.nvim_win_close(win, true) end
end

-- accept the fix, and type at the end of the buffer while the edit is on its way
press(5, "<leader>oa")
vim.api.nvim_feedkeys(vim.api.nvim_replace_termcodes("Go# typed while accepting<Esc>", true, false, true), "xt", false)
out.cursor_before = vim.api.nvim_win_get_cursor(0)
if not vim.wait(10000, function() return text():find("a %+ b") ~= nil end, 50) then
  return fail("the accepted hunk never arrived: " .. text())
end
out.cursor_after = vim.api.nvim_win_get_cursor(0)
out.after_accept = text()

-- reject the comment
press(9, "<leader>or")
if not vim.wait(10000, function() return #review() == 0 end, 50) then
  return fail("the rejected hunk is still shown")
end

-- follow up
press(1, "<leader>ou")
if not vim.wait(180000, function() return count(out.states, "finished") == 2 and #review() == 1 end, 100) then
  return fail("the follow-up did not come back for review: " .. vim.inspect(out.states))
end

-- restart the server: the review is still there
local old = client()
old:stop()
vim.wait(10000, function() return old:is_stopped() end, 50)
vim.cmd("doautocmd FileType") -- as reopening the file does
if not vim.wait(20000, function() return client() ~= nil and client() ~= old and client().initialized end, 50) then
  return fail("the server did not start again")
end
if not vim.wait(10000, function() return #review() == 1 end, 50) then
  return fail("no review after the restart")
end
local again = review()[1]
out.review_after_restart = again.message

-- accept the follow-up's hunk
press(again.lnum + 1, "<leader>oa")
if not vim.wait(10000, function() return text():find("Sum of a and b") ~= nil and #review() == 0 end, 50) then
  return fail("the follow-up's hunk never arrived: " .. text())
end
out.buffer = text()
out.disk_at_end = table.concat(vim.fn.readfile(env.OFFLOAD_REPO .. "/calc.py"), "\n")
finish()
