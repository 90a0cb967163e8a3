/* status.c: messages for the core's status codes. */
#include "ltt_core.h"

const char *ltt_status_str(ltt_status status)
{
    switch (status) {
    case LTT_OK:
        return "ok";
    case LTT_ERR_SIZE:
        return "invalid size (a dimension is not positive, or H is not a multiple of G)";
    case LTT_ERR_NORM:
        return "norm must be 1 or 2";
    case LTT_ERR_THRESHOLD:
        return "threshold must be a finite number in [0, 1)";
    case LTT_ERR_INDEX:
        return "index out of range";
    case LTT_ERR_NOMEM:
        return "out of memory";
    case LTT_ERR_OVERFLOW:
        return "a float32 intermediate (head vector) overflowed; inputs are too large";
    case LTT_ERR_NULL:
        return "a required array is missing (NULL pointer)";
    case LTT_ERR_NONFINITE:
        return "an input contains NaN or inf";
    }
    return "unknown status";
}
