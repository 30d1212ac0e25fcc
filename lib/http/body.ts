// A request body as every endpoint reads it: at most a size, JSON when it should be, and
// one error type the handler maps to 400, 413 or 422 (respond.ts).

export class PayloadError extends Error {
  override readonly name = 'PayloadError';
  constructor(message: string, readonly status: 400 | 413 | 422 = 400) {
    super(message);
  }
}

/** Reads the body with a size limit (Netlify buffers up to 6 MB; ours are ~1 KB). */
export async function readBody(req: Request, limitBytes: number): Promise<string> {
  const declared = Number(req.headers.get('content-length'));
  if (Number.isFinite(declared) && declared > limitBytes) throw new PayloadError(`body larger than ${limitBytes} bytes`, 413);
  const text = await req.text();
  if (Buffer.byteLength(text) > limitBytes) throw new PayloadError(`body larger than ${limitBytes} bytes`, 413);
  return text;
}

export function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    throw new PayloadError('body is not valid JSON');
  }
}
