#ifndef OUTBOX_CRABBITMQ_SHIM_H
#define OUTBOX_CRABBITMQ_SHIM_H

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <amqp_ssl_socket.h>
#include <openssl/ssl.h>

/* amqp_login is variadic, which Swift cannot call. PLAIN mechanism only. Advertises the
   connection.blocked capability (merged with rabbitmq-c's own), so that a broker under a resource
   alarm says so with connection.blocked / connection.unblocked instead of silently not reading. */
static inline amqp_rpc_reply_t outbox_amqp_login_plain(amqp_connection_state_t state, const char *vhost,
                                                       int channel_max, int frame_max, int heartbeat,
                                                       const char *user, const char *password) {
    amqp_table_entry_t capability;
    capability.key = amqp_cstring_bytes("connection.blocked");
    capability.value.kind = AMQP_FIELD_KIND_BOOLEAN;
    capability.value.value.boolean = 1;
    amqp_table_entry_t capabilities;
    capabilities.key = amqp_cstring_bytes("capabilities");
    capabilities.value.kind = AMQP_FIELD_KIND_TABLE;
    capabilities.value.value.table.num_entries = 1;
    capabilities.value.value.table.entries = &capability;
    amqp_table_t properties;
    properties.num_entries = 1;
    properties.entries = &capabilities;
    return amqp_login_with_properties(state, vhost, channel_max, frame_max, heartbeat, &properties,
                                      AMQP_SASL_METHOD_PLAIN, user, password);
}

/* TLS hardening rabbitmq-c 0.11 does not offer: at least TLS 1.2, and the system's CA store when
   no CA file is given (rabbitmq-c trusts no CA at all then). */
static inline int outbox_amqp_ssl_harden(amqp_socket_t *socket, int use_default_ca) {
    SSL_CTX *ctx = (SSL_CTX *)amqp_ssl_socket_get_context(socket);
    if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)) return 0;
    if (use_default_ca && !SSL_CTX_set_default_verify_paths(ctx)) return 0;
    return 1;
}

/* Client certificate and key. An encrypted key is refused (empty pass phrase) instead of letting
   OpenSSL prompt on the terminal, which would block the connection's thread. */
static inline int outbox_amqp_ssl_set_key(amqp_socket_t *socket, const char *cert, const char *key) {
    amqp_ssl_socket_set_key_passwd(socket, "");
    return amqp_ssl_socket_set_key(socket, cert, key);
}

/* Method ids are macros with casts, which Swift does not import. */
static const amqp_method_number_t OUTBOX_AMQP_BASIC_ACK = AMQP_BASIC_ACK_METHOD;
static const amqp_method_number_t OUTBOX_AMQP_BASIC_NACK = AMQP_BASIC_NACK_METHOD;
static const amqp_method_number_t OUTBOX_AMQP_BASIC_RETURN = AMQP_BASIC_RETURN_METHOD;
static const amqp_method_number_t OUTBOX_AMQP_BASIC_DELIVER = AMQP_BASIC_DELIVER_METHOD;
static const amqp_method_number_t OUTBOX_AMQP_CHANNEL_CLOSE = AMQP_CHANNEL_CLOSE_METHOD;
static const amqp_method_number_t OUTBOX_AMQP_CONNECTION_CLOSE = AMQP_CONNECTION_CLOSE_METHOD;
static const amqp_method_number_t OUTBOX_AMQP_CHANNEL_CLOSE_OK = AMQP_CHANNEL_CLOSE_OK_METHOD;
static const amqp_method_number_t OUTBOX_AMQP_CONNECTION_CLOSE_OK = AMQP_CONNECTION_CLOSE_OK_METHOD;
static const amqp_method_number_t OUTBOX_AMQP_CONNECTION_BLOCKED = AMQP_CONNECTION_BLOCKED_METHOD;
static const amqp_method_number_t OUTBOX_AMQP_CONNECTION_UNBLOCKED = AMQP_CONNECTION_UNBLOCKED_METHOD;

#endif
