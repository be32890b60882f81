// SKELETON: to be filled in.
namespace luna {}
