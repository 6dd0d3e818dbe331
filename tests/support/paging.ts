/** A page of a listing, as every paged procedure returns it. */
export interface Page<Item> {
  items: Item[];
  nextCursor: string | null;
}

/** Every item of a listing, page after page, following `nextCursor` until it is null. */
export async function allPages<Item>(fetchPage: (cursor: string | null) => Promise<Page<Item>>): Promise<Item[][]> {
  const pages: Item[][] = [];
  let cursor: string | null = null;
  do {
    const page: Page<Item> = await fetchPage(cursor);
    pages.push(page.items);
    cursor = page.nextCursor;
  } while (cursor);
  return pages;
}
