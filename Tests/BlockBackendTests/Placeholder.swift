import Testing

@Test func placeholderBlockBackendTests() {}
