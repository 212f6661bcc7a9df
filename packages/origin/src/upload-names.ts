/**
 * The final name of an upload, from the tus metadata `filename`: one plain file name
 * inside the upload directory, whatever the client asks for. Refused rather than
 * "cleaned up", so a client learns at creation that its name cannot be used, not
 * after sending gigabytes.
 */

/** The hidden directory under the upload directory that holds unfinished uploads. */
export const STAGING_DIR = '.canopy-uploads'

/** Most file systems cap a name at 255 bytes. */
const MAX_NAME_BYTES = 255

export class UploadNameError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'UploadNameError'
  }
}

/** Returns the name when it is safe, else throws UploadNameError with the reason (sent to the client as a 400). */
export function checkUploadName (name: string | null | undefined): string {
  if (name === undefined || name === null || name === '') {
    throw new UploadNameError('Upload-Metadata must carry a filename (tus metadata key "filename", base64 value)')
  }
  if (name.includes('\0')) throw new UploadNameError('the filename contains a NUL byte')
  if (name.includes('/') || name.includes('\\')) {
    throw new UploadNameError(`the filename ${JSON.stringify(name)} contains a path separator: give a plain file name, uploads land directly in the upload directory`)
  }
  if (name === '.' || name === '..') throw new UploadNameError(`the filename ${JSON.stringify(name)} is not a file name`)
  if (name === STAGING_DIR) throw new UploadNameError(`the filename ${STAGING_DIR} is reserved for unfinished uploads`)
  // Control characters end up in logs, terminals and the handler's environment.
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x1f\x7f]/.test(name)) throw new UploadNameError('the filename contains control characters')
  if (Buffer.byteLength(name) > MAX_NAME_BYTES) throw new UploadNameError(`the filename is longer than ${MAX_NAME_BYTES} bytes`)
  return name
}
