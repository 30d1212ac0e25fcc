// Runs in a fresh process on the deploy's Node (see invokePackaged in netlify-package.ts):
// imports the packaged function module named by argv[2], calls its default export with the
// request received over IPC, and sends back the response, or the error if it cannot load
// or throws. Plain JavaScript: it runs beside the package, without the repository's tooling.
import { pathToFileURL } from 'node:url';

process.once('message', async (spec) => {
  let reply;
  try {
    const mod = await import(pathToFileURL(process.argv[2]).href);
    if (typeof mod.default !== 'function') throw new Error(`${process.argv[2]} has no default export function`);
    const req = new Request(spec.url, { method: spec.method, headers: spec.headers, body: spec.body });
    const res = await mod.default(req, { requestId: 'package-test' });
    reply = { status: res.status, headers: Object.fromEntries(res.headers), body: await res.text() };
  } catch (err) {
    reply = { error: String(err?.stack ?? err) };
  }
  // Exit once the reply is out: a warm instance's open sockets must not hold the test.
  process.send(reply, () => process.exit(0));
});
