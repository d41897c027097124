// The e2b SDK against banger's E2B API: every step the issue names.
// Env: E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY (key A), OTHER_API_KEY
// (key B), CHECK_ISOLATION=1 to check that two sandboxes do not share
// files (each sandbox must be its own VM). Prints "SDK CHECK OK" last.
import { Sandbox, CommandExitError, AuthenticationError, NotFoundError, SandboxError } from 'e2b'
import assert from 'node:assert/strict'

const step = (s) => console.log(`step: ${s}`)
const t0 = Date.now()
step('create')
const sb = await Sandbox.create('base', { timeoutMs: 10 * 60_000, metadata: { purpose: 'sdk-check' }, envs: { FROM_CREATE: 'yes' } })
const createMs = Date.now() - t0
assert.ok(sb.sandboxId)

step('commands.run ok')
const r = await sb.commands.run('echo out; echo err >&2; echo "$FROM_CREATE $(whoami) $PWD"')
assert.equal(r.exitCode, 0)
assert.equal(r.stdout, `out\nyes ${process.env.EXPECT_USER ?? 'user'} ${process.env.EXPECT_HOME ?? '/home/user'}\n`)
assert.equal(r.stderr, 'err\n')
const firstRunMs = Date.now() - t0

step('commands.run failing')
await assert.rejects(sb.commands.run('echo bad >&2; exit 3'), (e) => {
  assert.ok(e instanceof CommandExitError, `got ${e}`)
  assert.equal(e.exitCode, 3)
  assert.equal(e.stderr, 'bad\n')
  return true
})

step('commands.run as root, with envs and cwd')
const rr = await sb.commands.run('echo "$(id -u) $X $PWD"', { user: 'root', envs: { X: 'y' }, cwd: '/tmp' })
assert.equal(rr.stdout, `${process.env.EXPECT_ROOT_UID ?? '0'} y /tmp\n`)

step('files text')
const home = process.env.EXPECT_HOME ?? '/home/user'
await sb.files.write(`${home}/dir/a.txt`, 'hello\n')
assert.equal(await sb.files.read(`${home}/dir/a.txt`), 'hello\n')

step('files binary')
const bin = new Uint8Array([0, 1, 2, 255, 254, 10, 13, 0])
await sb.files.write(`${home}/dir/b.bin`, bin)
const back = await sb.files.read(`${home}/dir/b.bin`, { format: 'bytes' })
assert.deepEqual(Array.from(back), Array.from(bin))

step('files list / exists / makeDir / rename / remove')
const names = (await sb.files.list(`${home}/dir`)).map((e) => e.name).sort()
assert.deepEqual(names, ['a.txt', 'b.bin'])
assert.equal(await sb.files.exists(`${home}/dir/a.txt`), true)
assert.equal(await sb.files.exists(`${home}/nope`), false)
assert.equal(await sb.files.makeDir(`${home}/made`), true)
await sb.files.rename(`${home}/dir/a.txt`, `${home}/made/c.txt`)
assert.equal(await sb.files.read(`${home}/made/c.txt`), 'hello\n')
await sb.files.remove(`${home}/made`)
assert.equal(await sb.files.exists(`${home}/made`), false)
await assert.rejects(sb.files.read(`${home}/missing.txt`), (e) => e instanceof NotFoundError)

step('commands.run reads the written file')
assert.equal((await sb.commands.run(`cat ${home}/dir/b.bin | od -An -tu1 | tr -s ' '`)).stdout.trim(), '0 1 2 255 254 10 13 0')

step('background command, list, kill')
const bg = await sb.commands.run('sleep 600', { background: true })
const procs = await sb.commands.list()
assert.ok(procs.some((p) => p.pid === bg.pid), 'background process listed')
assert.equal(await sb.commands.kill(bg.pid), true)

step('Sandbox.list')
const listed = await Sandbox.list().nextItems()
assert.ok(listed.some((s) => s.sandboxId === sb.sandboxId && s.metadata.purpose === 'sdk-check'))

step('Sandbox.connect')
const again = await Sandbox.connect(sb.sandboxId)
assert.equal((await again.commands.run(`cat ${home}/dir/a.txt 2>/dev/null || echo gone`)).stdout, 'gone\n')
assert.equal(await again.files.exists(`${home}/dir/b.bin`), true)

if (process.env.CHECK_ISOLATION === '1') {
  step('second sandbox does not see the first one\'s files')
  const sb2 = await Sandbox.create('base', { timeoutMs: 5 * 60_000 })
  assert.notEqual(sb2.sandboxId, sb.sandboxId)
  assert.equal(await sb2.files.exists(`${home}/dir/b.bin`), false)
  await sb2.files.write(`${home}/only2.txt`, 'two')
  assert.equal(await sb.files.exists(`${home}/only2.txt`), false)
  await sb2.kill()
}

step('wrong API key')
await assert.rejects(Sandbox.create('base', { apiKey: 'e2b_0000000000000000000000000000000000000000' }), (e) => e instanceof AuthenticationError)

step('unknown template')
await assert.rejects(Sandbox.create('no-such-template'), (e) => e instanceof SandboxError && e.statusCode === 404 || e instanceof NotFoundError)

if (process.env.OTHER_API_KEY) {
  step('another key does not find the sandbox')
  await assert.rejects(Sandbox.connect(sb.sandboxId, { apiKey: process.env.OTHER_API_KEY }), (e) => e instanceof NotFoundError)
  assert.equal(await Sandbox.kill(sb.sandboxId, { apiKey: process.env.OTHER_API_KEY }), false)
}

step('kill, then connect fails')
await sb.kill()
await assert.rejects(Sandbox.connect(sb.sandboxId), (e) => e instanceof NotFoundError)

console.log(JSON.stringify({ createMs, firstRunMs }))
console.log('SDK CHECK OK')
