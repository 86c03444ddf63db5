import Testing

@Test func placeholderNBDKernelTests() {}
