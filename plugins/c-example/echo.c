/* A goose-api plugin in C, ABI version 1: one tool, `echo`, that returns its arguments
 * as text. Build: cc -shared -fPIC -O2 -o echo.so echo.c
 * Define GOOSE_ABI_VERSION to build a library the daemon must reject. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef GOOSE_ABI_VERSION
#define GOOSE_ABI_VERSION 1
#endif

static const char MANIFEST[] =
    "{\"name\": \"c-echo\", \"version\": \"1.0.0\", \"tools\": [{\"name\": \"echo\", "
    "\"description\": \"Returns its arguments as JSON text\", "
    "\"input_schema\": {\"type\": \"object\"}}]}";

uint32_t goose_plugin_abi_version(void) { return GOOSE_ABI_VERSION; }

/* Every returned string is allocated with malloc, so goose_plugin_free can free it. */
static char *copy(const char *text) {
    char *result = malloc(strlen(text) + 1);
    if (result != NULL) strcpy(result, text);
    return result;
}

char *goose_plugin_manifest(void) { return copy(MANIFEST); }

/* Writes `text` as the body of a JSON string: quotes, backslashes and control bytes are
 * escaped. `out` has room for 6 bytes per input byte. */
static void escape(const char *text, char *out) {
    for (; *text != '\0'; text++) {
        unsigned char c = (unsigned char)*text;
        if (c == '"' || c == '\\') {
            *out++ = '\\';
            *out++ = (char)c;
        } else if (c < 0x20) {
            out += sprintf(out, "\\u%04x", c);
        } else {
            *out++ = (char)c;
        }
    }
    *out = '\0';
}

char *goose_plugin_call(const char *tool, const char *arguments) {
    if (strcmp(tool, "echo") != 0) {
        return copy("{\"error\": {\"code\": \"unknown_tool\", \"message\": \"no such tool\"}}");
    }
    static const char head[] = "{\"content\": [{\"type\": \"text\", \"text\": \"";
    static const char tail[] = "\"}], \"is_error\": false}";
    size_t size = sizeof head + strlen(arguments) * 6 + sizeof tail;
    char *result = malloc(size);
    if (result == NULL) return NULL;
    strcpy(result, head);
    escape(arguments, result + strlen(head));
    strcat(result, tail);
    return result;
}

void goose_plugin_free(char *value) { free(value); }
