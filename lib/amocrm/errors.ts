// The one error type of an amoCRM interaction, classified by what the sync should do:
//   retryable  network, timeout, 429, 5xx, no rate slot: try again later with backoff
//   permanent  no contact with that e-mail, no deal in the pipeline, stage rejected
//   operator   tokens revoked, client credentials rejected, account blocked or unpaid:
//              park the events until a person fixes it
export type ErrorKind = 'retryable' | 'permanent' | 'operator';

export class AmoError extends Error {
  override readonly name = 'AmoError';
  constructor(
    readonly kind: ErrorKind,
    /** Short stable code for logs, the outbox and tests, e.g. rate_limited. */
    readonly code: string,
    message: string,
    readonly details: { status?: number; retryAfterMs?: number; whatToDo?: string } = {},
  ) {
    super(message);
  }
}

export const retryable = (code: string, message: string, details?: AmoError['details']) =>
  new AmoError('retryable', code, message, details);
export const permanent = (code: string, message: string, details?: AmoError['details']) =>
  new AmoError('permanent', code, message, details);
export const needsOperator = (code: string, message: string, whatToDo: string, details?: AmoError['details']) =>
  new AmoError('operator', code, message, { ...details, whatToDo });
