#ifndef OUTBOX_CMONGOC_SHIM_H
#define OUTBOX_CMONGOC_SHIM_H

#include <mongoc/mongoc.h>

/* The message of a bson_error_t; Swift sees the fixed array as a tuple. */
static inline const char *outbox_bson_error_message(const bson_error_t *error) {
    return error->message;
}

/* Fresh heap bson_t (128-byte aligned by libbson) filled with a copy of BSON bytes. */
static inline bson_t *outbox_bson_new_from_data(const uint8_t *data, size_t length) {
    return bson_new_from_data(data, length);
}

/* Read-only view of a bson_t's bytes. */
static inline const uint8_t *outbox_bson_data(const bson_t *bson, uint32_t *length) {
    *length = bson->len;
    return bson_get_data(bson);
}

/* A heap bson_t for a reply, empty. libmongoc initialises a reply afresh (bson_init), which marks
   it as not allocated by bson_new: bson_destroy alone would then leave its 128 bytes behind, one
   leak per command. Free it with outbox_reply_free. */
static inline bson_t *outbox_reply_new(void) {
    bson_t *reply = (bson_t *) bson_aligned_alloc(BSON_ALIGNOF(bson_t), sizeof(bson_t));
    bson_init(reply);
    return reply;
}

/* Frees a reply of outbox_reply_new, whatever libmongoc made of it. */
static inline void outbox_reply_free(bson_t *reply) {
    bson_destroy(reply);
    bson_free(reply);
}

static inline bool outbox_error_has_label(const bson_t *reply, const char *label) {
    return mongoc_error_has_label(reply, label);
}

#endif
